//! `--api-key`: `/v1` requests must carry `Authorization: Bearer <key>`, as OpenAI's clients
//! send their `api_key`; browsers, which cannot set headers on a WebSocket, offer the key as
//! the subprotocol `openai-insecure-api-key.<key>` instead (OpenAI's convention).

use crate::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Lets the request through when no key is configured or when it sends the key; 401 otherwise.
pub(crate) async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = state.api_key.as_deref() else {
        return next.run(request).await;
    };
    let offered = crate::realtime::offered_protocols(request.headers())
        .find_map(|p| p.strip_prefix("openai-insecure-api-key."));
    if let Some(token) = offered {
        return if same_key(token.as_bytes(), key.as_bytes()) {
            next.run(request).await
        } else {
            ApiError::unauthorized("incorrect API key").into_response()
        };
    }
    let Some(header) = request.headers().get(AUTHORIZATION) else {
        return ApiError::unauthorized(
            "missing API key: send the header `Authorization: Bearer KEY` with the key given to --api-key",
        )
        .into_response();
    };
    let given = header
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(token) if same_key(token.as_bytes(), key.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::unauthorized("incorrect API key").into_response(),
        None => ApiError::unauthorized(
            "the Authorization header must read `Bearer KEY` with the key given to --api-key",
        )
        .into_response(),
    }
}

/// Compares keys in time independent of where they differ (no timing hint of a prefix).
fn same_key(given: &[u8], key: &[u8]) -> bool {
    given.len() == key.len() && given.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::same_key;

    #[test]
    fn keys_match_exactly() {
        assert!(same_key(b"secret", b"secret"));
        assert!(!same_key(b"secreT", b"secret"));
        assert!(!same_key(b"secret1", b"secret"));
        assert!(!same_key(b"", b"secret"));
    }
}
