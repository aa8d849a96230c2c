//! Who a tenant-scoped request is from and which tenant it addresses, as
//! extractors: [`TenantOf`] for queries, [`Caller`] for commands (the
//! tenant, the authenticated principal and the envelope headers, as the
//! command's [`Meta`]). Routes name the tenant `{company_id}` and
//! `{application_id}` in their path; the other path parameters are the
//! handler's own.

use crate::auth::Principal;
use crate::commands::Meta;
use crate::http::error::ApiError;
use crate::http::extract::tenant;
use crate::http::respond::meta;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::StatusCode;
use std::collections::HashMap;
use userstream_eventlog::Tenant;

/// The tenant of the path, checked (400 when an id is malformed).
pub struct TenantOf(pub Tenant);

impl<S: Send + Sync> FromRequestParts<S> for TenantOf {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(mut params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        let company_id = params.remove("company_id").unwrap_or_default();
        let application_id = params.remove("application_id").unwrap_or_default();
        tenant(company_id, application_id).map(TenantOf)
    }
}

/// A command's envelope: the path's tenant, the principal the
/// authentication middleware found, the correlation id and idempotency key.
pub struct Caller(pub Meta);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let TenantOf(tenant) = TenantOf::from_request_parts(parts, state).await?;
        let principal =
            parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "this route needs a credential")
            })?;
        meta(tenant, &principal, &parts.headers).map(Caller)
    }
}
