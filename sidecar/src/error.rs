use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use stead_core::ErrorBody;

use crate::storage::StorageError;

/// An error answered to a client or to the app: a status and the JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    pub fn into_http(self) -> http::Response<bytes::Bytes> {
        let body = ErrorBody::new(self.code, self.message).to_json();
        let mut resp = http::Response::new(bytes::Bytes::from(body));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_http().map(axum::body::Body::from)
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let msg = e.to_string();
        match e {
            StorageError::TurnFinished => ApiError::new(StatusCode::GONE, "turn_finished", msg),
            StorageError::ReservedName(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "reserved_name", msg)
            }
            StorageError::NotAllowed(_) => ApiError::new(StatusCode::FORBIDDEN, "not_allowed", msg),
            StorageError::BadRequest(_) => ApiError::bad_request("bad_request", msg),
            StorageError::Sql(_) => ApiError::bad_request("sql_error", msg),
            StorageError::DatabaseFull => ApiError::too_large("database_full", msg),
            StorageError::ResultTooLarge { .. } => ApiError::too_large("sql_result_too_large", msg),
            StorageError::ListTooLarge { .. } => ApiError::too_large("list_too_large", msg),
            StorageError::StorageFull | StorageError::AlarmIndex { full: true } => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "storage_full", msg)
            }
            StorageError::Deadline => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "turn_timeout", msg)
            }
            StorageError::VolumeFailed => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "volume_failed", msg)
            }
            StorageError::EarlierCommitFailed => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "commit_failed", msg)
            }
            StorageError::Io
            | StorageError::AlarmIndex { full: false }
            | StorageError::Internal(_)
            | StorageError::Closed => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", msg)
            }
        }
    }
}
