//! API errors: a status code and the body `{"error": "...", "detail": "..."}`, `error` a
//! short class-like line, `detail` what exactly went wrong.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tributary::broker::amqp::AmqpError;
use tributary::store::StoreError;

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            error,
            detail: detail.into(),
        }
    }

    /// 400.
    pub fn bad_request(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, detail)
    }

    /// 401.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 404.
    pub fn not_found(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error, detail)
    }

    /// 413.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large",
            format!("the request body is larger than {limit} bytes (--max-body-bytes)"),
        )
    }

    /// 503.
    pub fn unavailable(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, error, detail)
    }

    /// 500.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error", detail)
    }

    /// A runtime error of a handler: 503 when the broker or Redis failed, else 500.
    pub fn from_runtime(e: &anyhow::Error) -> Self {
        let detail = tributary::runtime::cli::chain(e.as_ref());
        let broker = e
            .chain()
            .any(|c| c.is::<AmqpError>() || c.is::<lapin::Error>());
        let redis = e.chain().any(|c| {
            c.downcast_ref::<StoreError>()
                .is_some_and(|s| !matches!(s, StoreError::Corrupt { .. }))
        });
        if broker {
            Self::unavailable("broker unavailable", detail)
        } else if redis {
            Self::unavailable("redis unavailable", detail)
        } else {
            Self::internal(detail)
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::from_runtime(&e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, "{}: {}", self.error, self.detail);
        }
        let body = serde_json::json!({"error": self.error, "detail": self.detail});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_errors_are_classified() {
        let broker = anyhow::Error::from(AmqpError::Nacked("fetch".into())).context("publishing");
        let e = ApiError::from_runtime(&broker);
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.error, "broker unavailable");
        assert!(e.detail.starts_with("publishing: "), "{}", e.detail);

        let corrupt = anyhow::Error::from(StoreError::Corrupt {
            key: "k".into(),
            detail: "x".into(),
        });
        assert_eq!(ApiError::from_runtime(&corrupt).status, 500);
        assert_eq!(
            ApiError::from_runtime(&anyhow::anyhow!("disk full")).error,
            "internal error"
        );
    }
}
