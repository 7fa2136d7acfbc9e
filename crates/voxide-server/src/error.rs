//! Errors as OpenAI's API writes them: `{"error": {"message", "type", "param", "code"}}` with
//! the matching HTTP status, so that the official clients raise their usual exceptions
//! (`BadRequestError`, `AuthenticationError`, `NotFoundError`, `RateLimitError`, …).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// One failed request: what went wrong, in a sentence, and how OpenAI classifies it.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A one-line message for the user.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, `server_error`, …).
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `invalid_api_key`, …).
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// 400: a parameter or the audio is not usable.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 naming the field at fault.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message).with_param(param)
    }

    /// 401: the API key is missing or wrong.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    /// 404: no such model, or no such route.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    /// 404 for a model id this server does not serve.
    pub fn unknown_model(id: &str, served: &[&str]) -> Self {
        let served = if served.is_empty() {
            "none".to_string()
        } else {
            served.join(", ")
        };
        Self::not_found(format!(
            "the model {id:?} does not exist on this server (it serves: {served})"
        ))
        .with_param("model")
        .with_code("model_not_found")
    }

    /// 405: the route exists for other methods.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            message,
        )
    }

    /// 413: the request body is larger than its route takes.
    pub fn body_too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
    }

    /// 413: the upload is larger than `--max-upload-mb`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::body_too_large(message).with_code("file_too_large")
    }

    /// 429: every slot is busy and the queue is full.
    pub fn busy() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "the server is busy: every model slot is in use and the queue is full; retry shortly",
        )
        .with_code("rate_limit_exceeded")
    }

    /// 429: every realtime session slot is taken.
    pub fn sessions_full(limit: usize) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            format!(
                "the server runs at most {limit} realtime sessions at once (--max-realtime-sessions); retry when one ends"
            ),
        )
        .with_code("rate_limit_exceeded")
    }

    /// 504: the request did not finish within `--request-timeout-s`.
    pub fn timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            format!(
                "the request did not finish within {} s (--request-timeout-s)",
                limit.as_secs_f64()
            ),
        )
        .with_code("timeout")
    }

    /// 500: inference failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The same error, naming the request field at fault.
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The error object, as the response body or a server-sent `error` event carries it.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, "{}", self.message);
        }
        (self.status, Json(self.body())).into_response()
    }
}

impl From<voxide_runtime::Error> for ApiError {
    /// Request and audio problems are the client's (400); the rest is the server's (500).
    fn from(e: voxide_runtime::Error) -> Self {
        use voxide_runtime::Error;
        match e {
            Error::InvalidRequest(m) => ApiError::bad_request(m),
            Error::Audio(e) => ApiError::from(e),
            Error::Model(e) => ApiError::from(e),
            e @ Error::Resolve(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl From<voxide_models::Error> for ApiError {
    fn from(e: voxide_models::Error) -> Self {
        match e {
            voxide_models::Error::InvalidRequest(m) => ApiError::bad_request(m),
            voxide_models::Error::InvalidField { field, message } => {
                ApiError::invalid_param(field, message)
            }
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl From<voxide_audio::AudioError> for ApiError {
    fn from(e: voxide_audio::AudioError) -> Self {
        ApiError::invalid_param("file", e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_openai_shaped() {
        let e = ApiError::unknown_model("whisper-9", &["tiny"]);
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(
            e.body(),
            json!({"error": {
                "message": "the model \"whisper-9\" does not exist on this server (it serves: tiny)",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }})
        );
    }

    #[test]
    fn request_errors_are_the_clients_and_inference_errors_the_servers() {
        let e: ApiError = voxide_runtime::Error::InvalidRequest("unknown language".into()).into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e: ApiError = voxide_models::Error::Tensor(candle_core::Error::Msg("x".into())).into();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        let e: ApiError = voxide_audio::AudioError::NotAudio {
            name: "a.wav".into(),
        }
        .into();
        assert_eq!(
            (e.status, e.param.as_deref()),
            (StatusCode::BAD_REQUEST, Some("file"))
        );
    }
}
