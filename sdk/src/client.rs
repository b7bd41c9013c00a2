//! The client of the sidecar's app API: `POST {api}/v1/...` with JSON and `stead-turn`.

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
