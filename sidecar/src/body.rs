//! Client bodies: read whole, within the size limit and without long pauses.

use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;

use crate::error::ApiError;

/// Reads a whole client body. A declared length over `limit` is refused with 413 before a
/// byte is read, and so is a body that grows past it; a body that stops arriving for
/// `timeout` gets 408; a malformed one (a bad chunk size) gets 400.
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    refuse_declared_length(&body, limit)?;
    let too_large = || {
        ApiError::too_large(
            "body_too_large",
            format!("request bodies are limited to {limit} bytes"),
        )
    };
    let mut body = body;
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the request body stopped arriving ({} s without data); send it whole and without pauses",
                        timeout.as_secs_f64()
                    ),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(ApiError::bad_request(
                    "malformed_body",
                    "the request body is malformed (bad chunked encoding) or ended early",
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Refuses (413) a body whose declared `Content-Length` is over `limit`, without reading it.
pub fn refuse_declared_length(body: &Body, limit: usize) -> Result<(), ApiError> {
    let declared = hyper::body::Body::size_hint(body).lower();
    if declared > limit as u64 {
        return Err(ApiError::too_large(
            "body_too_large",
            format!(
                "the request body is {declared} bytes; request bodies are limited to {limit} bytes"
            ),
        ));
    }
    Ok(())
}
