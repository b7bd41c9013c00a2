//! A small HTTP client for the scenarios: every request has a deadline, so a hang shows up as
//! an error instead of a stuck test.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long a TCP connect may take (an unreachable address fails instead of hanging).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request may take: longer than the sidecar's default turn timeout (30 s),
/// so that a stuck turn is seen as the sidecar's own answer (504), not as a client timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An answer: status, the headers the scenarios look at, body text.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

impl Reply {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The body as a decimal number, if it is.
    pub fn number(&self) -> Option<u64> {
        self.body.trim().parse().ok()
    }

    /// A 503 with a Retry-After header and a JSON error body: "the owner is unreachable".
    pub fn is_unavailable(&self) -> bool {
        self.status == 503
            && self.retry_after.is_some()
            && self.json().is_some_and(|j| j.get("error").is_some())
    }
}

#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(20))
            .build(connector);
        Self { inner }
    }

    /// Sends a request; `Err` when no answer came (refused, reset, timed out).
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.send_now(method, url, headers, body)).await
        {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{method} {url}: no answer within {REQUEST_TIMEOUT:?}"
            )),
        }
    }

    async fn send_now(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let resp = self
            .inner
            .request(req)
            .await
            .map_err(|e| format!("{method} {url}: {e:?}"))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {url}: body: {e}"))?
            .to_bytes();
        Ok(Reply {
            status,
            retry_after,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    pub async fn get(&self, url: &str) -> Result<Reply, String> {
        self.send("GET", url, &[], "").await
    }

    pub async fn post(&self, url: &str, body: &str) -> Result<Reply, String> {
        self.send("POST", url, &[], body).await
    }
}
