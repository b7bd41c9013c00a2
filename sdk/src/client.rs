//! The client of the sidecar's app API: `POST {api}/v1/...` with JSON and `stead-turn`, and
//! object calls, which carry a whole HTTP request to another object and its answer back.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use stead_core::ErrorBody;

use crate::error::{ApiError, Error, Result};
use crate::message::{Request, Response};

/// A shared, cheap-to-clone client with a keep-alive connection pool.
#[derive(Clone)]
pub(crate) struct ApiClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// The base URL without a trailing `/`.
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    /// A client of the app API at `base` (e.g. `http://127.0.0.1:9787`). Only `http://` URLs
    /// are supported: the API listens on loopback.
    pub(crate) fn new(base: &str) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        let uri: Uri = format!("{base}/v1/")
            .parse()
            .map_err(|e| Error::msg(format!("the app API URL {base:?} is not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(Error::msg(format!(
                "the app API URL {base:?} must be an http:// URL with a host"
            )));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            inner: Arc::new(Inner { base, client }),
        })
    }

    /// Calls `POST {base}/v1/{path}` with the JSON of `body` under `token`, and parses the JSON
    /// answer. A non-2xx answer becomes [`Error::Api`].
    pub(crate) async fn call<B, R>(&self, token: &HeaderValue, path: &str, body: &B) -> Result<R>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let body = serde_json::to_vec(body)?;
        let uri = format!("{}/v1/{path}", self.inner.base);
        let req = http::Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                HeaderName::from_static(stead_core::protocol::TURN),
                token.clone(),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::Protocol(format!("cannot build the request: {e}")))?;
        let res = self
            .inner
            .client
            .request(req)
            .await
            .map_err(|e| Error::Transport(format_chain(&e)))?;
        let status = res.status();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Transport(format_chain(&e)))?
            .to_bytes();
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| {
                Error::Protocol(format!("{path} answered JSON this SDK cannot read: {e}"))
            })
        } else {
            Err(Error::Api(api_error(status, &bytes)))
        }
    }

    /// Sends `req` as `{method} {base}/v1/{path}` under `token` and returns the answer whatever
    /// its status. `path` is what follows `/v1/`, query string included. The request's headers
    /// go along, except `stead-*` headers (the sidecar sets those) and the headers that frame a
    /// message on one connection (`host`, `content-length`, `connection`, …), which hyper
    /// writes itself. The answer loses its framing headers too (its body is whole in memory),
    /// and its `stead-*` headers.
    pub(crate) async fn send(
        &self,
        token: &HeaderValue,
        path: &str,
        req: Request,
    ) -> Result<Response> {
        let (parts, body) = req.into_parts();
        let uri: Uri = format!("{}/v1/{path}", self.inner.base)
            .parse()
            .map_err(|e| Error::Protocol(format!("cannot call /v1/{path}: {e}")))?;
        let mut out = http::Request::new(Full::new(body));
        *out.method_mut() = parts.method;
        *out.uri_mut() = uri;
        let headers = out.headers_mut();
        for (name, value) in &parts.headers {
            if !is_stead(name) && !is_framing(name) && name != header::HOST {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(
            HeaderName::from_static(stead_core::protocol::TURN),
            token.clone(),
        );
        let res = self
            .inner
            .client
            .request(out)
            .await
            .map_err(|e| Error::Transport(format_chain(&e)))?;
        let (mut parts, body) = res.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Error::Transport(format_chain(&e)))?
            .to_bytes();
        // `stead-*` headers of the answer were meant for the sidecar (e.g. `stead-rollback`):
        // passing the answer on as the caller's own must not roll the caller's turn back.
        let dropped: Vec<HeaderName> = (parts.headers.keys())
            .filter(|n| is_stead(n) || is_framing(n))
            .cloned()
            .collect();
        for name in dropped {
            parts.headers.remove(name);
        }
        Ok(Response::from_parts(parts, body))
    }
}

/// Headers about one connection or the framing of one message, not about its content
/// (RFC 9110 §7.6.1, plus `content-length`).
fn is_framing(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

fn is_stead(name: &HeaderName) -> bool {
    name.as_str()
        .starts_with(stead_core::protocol::HEADER_PREFIX)
}

fn api_error(status: StatusCode, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ApiError {
            status,
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => ApiError {
            status,
            code: "http_error".to_owned(),
            message: String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned(),
        },
    }
}

/// An error with its sources, which is where hyper keeps the useful part.
fn format_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
