//! The SDK's error type.

use std::fmt;

use http::StatusCode;
use stead_core::ErrorBody;

use crate::message::Response;

/// A `Result` whose error is the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in an app built on the SDK.
///
/// An `Error` returned from [`DurableObject::fetch`](crate::DurableObject::fetch) becomes a
/// `500` answer with a JSON error body, which rolls the turn back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The sidecar's app API refused the call (a limit, a finished turn, an SQL error…).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The app API could not be reached, or the connection failed mid-call.
    #[error("cannot reach the app API: {0}")]
    Transport(String),
    /// A value could not be turned into JSON, or a stored value is not the JSON of the type asked
    /// for.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The app API answered something this SDK does not understand.
    #[error("unexpected answer from the app API: {0}")]
    Protocol(String),
    /// An I/O error, e.g. while binding the listening socket.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Anything else, raised by the app's own code.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// An error with a message, for the app's own failures.
    ///
    /// ```
    /// let e = stead_sdk::Error::msg("the room is full");
    /// assert_eq!(e.to_string(), "the room is full");
    /// ```
    pub fn msg(message: impl fmt::Display) -> Self {
        Error::Other(message.to_string().into())
    }

    /// Wraps any error of the app's own code.
    pub fn other(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Other(Box::new(error))
    }

    /// The app API's refusal, if this error is one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(e) => Some(e),
            _ => None,
        }
    }

    /// The machine-readable code this error has in a JSON error body.
    pub fn code(&self) -> &str {
        match self {
            Error::Api(e) => &e.code,
            Error::Transport(_) => "api_unreachable",
            Error::Json(_) => "json_error",
            Error::Protocol(_) => "protocol_error",
            Error::Io(_) => "io_error",
            Error::Other(_) => "app_error",
        }
    }

    /// The answer the SDK sends for an error that escaped `fetch`: `500` with
    /// `{"error": {"code", "message"}}`. A 5xx answer rolls the turn back.
    pub(crate) fn to_fetch_response(&self) -> Response {
        crate::message::error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            self.code(),
            &self.to_string(),
        )
    }
}

impl From<crate::cache::TurnFinished> for Error {
    /// The refusal the sidecar gives a call with a finished turn's token, made locally: under
    /// protocol 2 a handle of a turn that has answered must not read or change the cache.
    fn from(_: crate::cache::TurnFinished) -> Self {
        Error::Api(ApiError {
            status: StatusCode::GONE,
            code: "turn_finished".to_owned(),
            message: "this turn has already answered: its storage and alarm handles are closed; \
                      do background work by sending a request to the object"
                .to_owned(),
        })
    }
}

/// A refusal of the app API: its status and the `{"error": {"code", "message"}}` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("app API refused the call: {status} {code}: {message}")]
pub struct ApiError {
    /// The HTTP status, e.g. `413`.
    pub status: StatusCode,
    /// The stable code, e.g. `key_too_large` or `turn_finished`.
    pub code: String,
    /// What was wrong, in words.
    pub message: String,
}

impl ApiError {
    /// The refusal as an answer to pass on to the client: the same status and JSON body.
    ///
    /// Note that a status below 500 lets the turn commit its other writes.
    pub fn to_response(&self) -> Response {
        crate::message::error_response(self.status, &self.code, &self.message)
    }

    /// The refusal as the JSON error body.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody::new(self.code.clone(), self.message.clone())
    }
}
