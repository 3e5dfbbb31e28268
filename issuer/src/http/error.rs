//! One error shape for every refusal: `{"error": {"code", "message"}}`,
//! the status from the kind. Internal details are logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::storage::StorageError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, for programs: `not_found`, `invalid`, `conflict`...
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// Seconds to wait before trying again, for refusals that pass.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// Logged in full; the client is told only that it failed.
    pub fn internal(detail: impl Into<String>) -> ApiError {
        let detail = detail.into();
        tracing::error!(%detail, "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed; nothing was changed by this request",
        )
    }
}

/// How soon a request refused for want of the database may be tried again.
pub const UNAVAILABLE_RETRY_SECS: u64 = 2;

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> ApiError {
        match e {
            StorageError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StorageError::Invalid(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m)
            }
            StorageError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StorageError::Backend(detail) => ApiError::internal(detail),
            StorageError::Unavailable(detail) => {
                tracing::warn!(%detail, "the database is unavailable");
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable for a moment: try the request again",
                );
                e.retry_after = Some(UNAVAILABLE_RETRY_SECS);
                e
            }
        }
    }
}

/// Every refusal's body.
// Written with the very types the OpenAPI document describes it by.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `not_found`, `bad_request`, `unauthorized`,
    /// `invalid`, `conflict`, `unsupported_media_type`, `too_large`,
    /// `rate_limited`, `bad_signature`, `websocket_required`,
    /// `method_not_allowed`, `internal`, `unavailable`.
    #[schema(example = "not_found")]
    pub code: &'static str,
    /// For people: what was wrong, and what to do about it.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

// Refusals many operations share, as reusable responses of the OpenAPI
// document (`#/components/responses/...`). Described, never built: the
// body is always an `ApiError`'s.

/// No organizer's token, a malformed `Authorization` header, or a token
/// that is not an organizer's (or was revoked).
#[derive(utoipa::ToResponse)]
#[response(headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
pub struct Unauthorized(pub ErrorBody);

/// The body is not `Content-Type: application/json`.
#[derive(utoipa::ToResponse)]
pub struct NotJson(pub ErrorBody);

/// The body is larger than the operation takes (64 KiB; a venue 8 MiB).
#[derive(utoipa::ToResponse)]
pub struct TooLarge(pub ErrorBody);

/// Too many holds and orders from this address: come back after
/// `Retry-After` seconds.
#[derive(utoipa::ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Seconds to wait")))]
pub struct RateLimited(pub ErrorBody);

/// The server failed (the details are logged, not sent); nothing was
/// changed by the request.
#[derive(utoipa::ToResponse)]
pub struct Internal(pub ErrorBody);
