//! Every request has an id: the client's `X-Request-Id` when it is one a
//! log can hold (1 to 128 of letters, digits and `. _ - :`), otherwise a
//! new UUIDv7; a malformed one is replaced, never logged. The id is
//! returned in `X-Request-Id`, recorded in the `http.request` span, and is
//! the `correlation_id` of the events a command appends when the client
//! sends no `X-Correlation-Id`.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

pub const HEADER: &str = "x-request-id";

/// Whether a client's id may be kept as it is.
pub fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
}

/// Gives the request its id (the client's, or a new one) and returns it on the response.
pub async fn assign(mut request: Request, next: Next) -> Response {
    let given = request.headers().get(HEADER).and_then(|v| v.to_str().ok()).filter(|id| acceptable(id));
    let id = match given {
        Some(id) => id.to_string(),
        None => uuid::Uuid::now_v7().to_string(),
    };
    // Both spellings pass `acceptable`, so they are valid header values.
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(HEADER, value.clone());
        let mut response = next.run(request).await;
        response.headers_mut().insert(HEADER, value);
        return response;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::acceptable;

    #[test]
    fn ids_a_log_can_hold_are_kept_and_others_are_not() {
        assert!(acceptable("0b6f-req:1.a_b"));
        assert!(!acceptable(""));
        assert!(!acceptable(&"a".repeat(129)));
        assert!(!acceptable("with space"));
        assert!(!acceptable("line\nbreak"));
        assert!(!acceptable("naïve"));
    }
}
