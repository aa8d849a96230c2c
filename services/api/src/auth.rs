//! The one place every request passes before its handler. It attaches the
//! caller's [`Principal`]; credentials and tenant checks plug in here.
//!
//! Today the service is open: every caller is [`Principal::Anonymous`]
//! (credentials arrive with the access issue). `x-fp-*` signing headers of
//! the Fynd SDK are accepted and ignored.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

#[derive(Debug, Clone)]
pub enum Principal {
    Anonymous,
}

impl Principal {
    /// The actor recorded in event envelopes.
    pub fn actor(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".to_string(),
        }
    }
}

pub async fn authenticate(mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(Principal::Anonymous);
    next.run(request).await
}
