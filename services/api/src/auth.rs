//! The one place every request passes before its handler: it finds the
//! caller's credential and checks it against the tenant in the path.
//!
//! - Fynd routes (`/service/platform/…/company/{c}/application/{a}/…`) need
//!   `Authorization: Bearer <access token>` from the token endpoint.
//! - Passage routes (`/v1/apps/{app}/…`) need `Authorization: Bearer
//!   <api_key>.<api_secret>` (an access token is accepted too).
//! - No or a bad credential → 401; a credential of another company, or bound
//!   to another application → 403. Ids of other tenants are the handlers'
//!   business: they answer 404.
//! - `x-fp-*` signing headers of the Fynd SDK are accepted and ignored (their
//!   key is a public constant; they prove nothing).
//! - Operational routes and the token endpoint are open; the token endpoint
//!   checks HTTP Basic credentials itself.
//! - Secret checks (a Passage bearer here, HTTP Basic at the token endpoint)
//!   pass [`crate::throttle`] first: too many failures → 429 with
//!   `Retry-After`, before the secret is looked at. With `--rate-limit`,
//!   every authenticated request counts against its credential's rate.

use crate::access::Credential;
use crate::http::error::{ApiError, PassageError};
use crate::throttle::Refused;
use crate::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone)]
pub enum Principal {
    /// Open routes: health, readiness, the token endpoint.
    Anonymous,
    Key(Credential),
}

impl Principal {
    /// The actor recorded in event envelopes.
    pub fn actor(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".to_string(),
            Principal::Key(c) => format!("apikey:{}", c.key_id),
        }
    }

    /// The company of a verified caller.
    pub fn company(&self) -> Option<&str> {
        match self {
            Principal::Anonymous => None,
            Principal::Key(c) => Some(&c.company_id),
        }
    }
}

/// Which surface a path belongs to, with the tenant ids it names.
enum Surface<'a> {
    Fynd {
        company_id: &'a str,
        application_id: &'a str,
    },
    Passage {
        app_id: &'a str,
    },
    /// `/metrics`, `/openapi.json`, `/docs`: loopback, any valid credential,
    /// or anyone with `--ops-public`.
    Ops,
    Open,
}

fn surface(path: &str) -> Surface<'_> {
    let mut parts = path.trim_start_matches('/').split('/');
    let segments: Vec<&str> = parts.by_ref().take(7).collect();
    match segments.as_slice() {
        ["service", "platform", _, "v1.0", "company", company_id, "application"] => {
            let application_id = parts.next().unwrap_or("");
            Surface::Fynd { company_id, application_id }
        }
        ["v1", "apps", app_id, ..] => Surface::Passage { app_id },
        [route] if crate::ops::GUARDED.contains(route) => Surface::Ops,
        _ => Surface::Open,
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty() && *t != "null")
}

/// The peer address of the connection, when the server was started with
/// connect info (in-process tests have none); every request carries it as
/// an extension from [`authenticate`] on. Forwarded headers are not
/// trusted: any client can write them.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub Option<IpAddr>);

fn client_address(request: &Request) -> Option<IpAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_canonical())
}

/// The `Retry-After` header of a 429.
pub fn retry_after(mut response: Response, refused: Refused) -> Response {
    response.headers_mut().insert(header::RETRY_AFTER, refused.seconds().into());
    response
}

fn passage_too_many(refused: Refused, what: &str) -> Response {
    let error = PassageError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", what.to_string());
    retry_after(error.into_response(), refused)
}

/// The caller of an operational route: anyone with `--ops-public` or from
/// loopback, else the holder of any valid credential (an access token or a
/// Passage key, checked under the failure limits), else 401.
async fn ops_caller(state: &AppState, address: Option<IpAddr>, headers: &HeaderMap) -> Result<Principal, Response> {
    if state.config.ops_public || address.is_some_and(|a| a.is_loopback()) {
        return Ok(Principal::Anonymous);
    }
    let credential = match bearer(headers) {
        Some(token) if token.starts_with("ust1.") => state.access.verify_token(token, state.commands.now()),
        Some(token) => Some(verify_passage_key(state, address, token).await?),
        None => None,
    };
    credential.map(Principal::Key).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "operational routes answer loopback, or any valid credential (Authorization: Bearer …); see --ops-public",
        )
        .into_response()
    })
}

/// A Passage bearer of an API key, checked under the failure limits.
async fn verify_passage_key(state: &AppState, address: Option<IpAddr>, bearer: &str) -> Result<Credential, Response> {
    let key = bearer.split_once('.').map(|(k, _)| k);
    if let Err(refused) = state.throttle.before_check(address, key) {
        return Err(passage_too_many(refused, "too many failed authentications; retry later"));
    }
    match state.access.verify_bearer(bearer).await {
        Ok(Some(credential)) => {
            state.throttle.succeeded(address, &credential.key_id);
            Ok(credential)
        }
        Ok(None) => {
            state.throttle.failed(address, key);
            Err(PassageError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_access_token",
                "a valid API key is required (Authorization: Bearer <api key>)",
            )
            .into_response())
        }
        Err(e) => Err(PassageError::from(ApiError::internal(e)).into_response()),
    }
}

pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let address = client_address(&request);
    request.extensions_mut().insert(ClientAddress(address));
    let principal = match surface(&path) {
        Surface::Open => Principal::Anonymous,
        Surface::Ops => match ops_caller(&state, address, request.headers()).await {
            Ok(principal) => principal,
            Err(response) => return response,
        },
        Surface::Fynd { company_id, application_id } => {
            let Some(credential) =
                bearer(request.headers()).and_then(|t| state.access.verify_token(t, state.commands.now()))
            else {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a valid access token is required (Authorization: Bearer …, from the oauth/token endpoint)",
                )
                .into_response();
            };
            if !credential.allows(Some(company_id), application_id) {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this credential may not access this company or application",
                )
                .into_response();
            }
            if let Err(refused) = state.throttle.request(&credential.key_id) {
                let error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    "this credential is over its request rate (--rate-limit); retry later",
                );
                return retry_after(error.into_response(), refused);
            }
            Principal::Key(credential)
        }
        Surface::Passage { app_id } => {
            let credential = match bearer(request.headers()) {
                Some(token) if token.starts_with("ust1.") => state.access.verify_token(token, state.commands.now()),
                Some(token) => match verify_passage_key(&state, address, token).await {
                    Ok(c) => Some(c),
                    Err(response) => return response,
                },
                None => None,
            };
            let Some(credential) = credential else {
                return PassageError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_access_token",
                    "a valid API key is required (Authorization: Bearer <api key>)",
                )
                .into_response();
            };
            if !credential.allows(None, app_id) {
                return PassageError::new(
                    StatusCode::FORBIDDEN,
                    "operation_not_allowed",
                    "this API key may not access this app",
                )
                .into_response();
            }
            if let Err(refused) = state.throttle.request(&credential.key_id) {
                return passage_too_many(refused, "this API key is over its request rate (--rate-limit); retry later");
            }
            Principal::Key(credential)
        }
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}
